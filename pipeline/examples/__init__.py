"""Example builders: per-user rows -> the dataset's examples, tf.Examples, shards and tables."""
