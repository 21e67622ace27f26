"""The watch-folder daemon (``edge-birads watch``): classify every image that lands in an inbox, exactly once.

- :mod:`.cli`: the command's options; :mod:`.config`: settings, the config file, folder checks and locks.
- :mod:`.inbox`: which inbox entries are complete (inotify or polling).
- :mod:`.daemon`: the loop and taking files out of the inbox; :mod:`.filing`: one claimed file from its
  bytes to its record and done/ or failed/; :mod:`.status`: counts and the heartbeat file.
- :mod:`.state`: what is remembered across restarts (content index, claims, unmovable entries).
- :mod:`.log`: the daemon's log lines; :mod:`.outbox`: DICOM SRs filed and sent after each result.
"""
