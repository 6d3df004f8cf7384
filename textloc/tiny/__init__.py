"""textloc-tiny, the embedded model: its data renderer (`data`), architecture (`model`),
trainer (`train`) and judge (`evaluate`); the shipped pipeline folder is `weights/`."""
