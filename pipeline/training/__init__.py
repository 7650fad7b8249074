"""What training reads and builds: the input pipeline and the model of a config and its data."""
