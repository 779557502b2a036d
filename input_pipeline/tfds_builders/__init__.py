"""TFDS builders for SA-1B, SA-V and DAVIS-style folders (array_record, no TensorFlow needed).

Each module defines the dataset's `features()`, `examples_from_tar(path, config)` (the one
conversion of an original shard into TFDS examples, shared by both ways of preparing; DAVIS:
`find_shards` + `examples_from_shard`, a shard being a group of video folders), and a
`GeneratorBasedBuilder` (single process, the standard TFDS way; what the two share, finding the
shards and looping over them, is `base.py`). `input_pipeline.prepare` runs the same conversion
over many shards in parallel processes, resumably, and writes the same dataset layout
(`tfds.data_source(name, data_dir=...)` reads either).
"""
