"""Reports: the compare and tune reports and the helpers that render them."""
