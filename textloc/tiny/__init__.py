"""The embedded models, textloc-tiny (IF, a pixel U-Net), textloc-tiny-sd3 (SD3, an MMDiT on
latents) and textloc-tiny-flux (FLUX, double- and single-stream blocks on textloc-tiny-sd3's
latents): their data renderer (`data`), architectures (`model`, `model_sd3`, `model_flux`, and
`architectures`, what they differ in), the autoencoder stage of textloc-tiny-sd3 (`autoencoder`),
the one trainer (`train`, with `runs`) and the judge (`evaluate`); the shipped pipeline folders are
`weights/`, `weights_sd3/` and `weights_flux/`."""
