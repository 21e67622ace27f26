"""Evaluation: metrics, int8 conversion with the parity gate, model cards and reports."""
