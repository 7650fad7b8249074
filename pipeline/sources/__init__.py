"""Sources: each reads one kind of input into rows and rejections with reasons."""
