"""The synthetic expert-selection study (`mtlrec synthetic`, pipeline/stages/synthetic.py)."""
