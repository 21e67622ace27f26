from edge_birads.cli import main

main()
