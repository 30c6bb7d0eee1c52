"""``python -m intermod.analysis.validation``: regenerate docs/validation.md."""

from .report import main

main()
