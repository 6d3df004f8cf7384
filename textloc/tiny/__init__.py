"""The embedded models, textloc-tiny (IF, a pixel U-Net) and textloc-tiny-sd3 (SD3, an MMDiT on
latents): their data renderer (`data`), architectures (`model`, `model_sd3`, and `architectures`,
what the two differ in), the autoencoder stage of the latent one (`autoencoder`), the one trainer
(`train`, with `runs`) and the judge (`evaluate`); the shipped pipeline folders are `weights/` and
`weights_sd3/`."""
