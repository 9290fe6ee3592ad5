"""The asset layer, one module per stage in data-flow order: catalog → splits → foundation (pool, CLIP,
index, Stable Diffusion) → images (prompts, augmentation images, excluded classes) → datasets →
classifier → reports, with duplicates beside images. Each asset reads its inputs, calls the core,
writes its output and returns metadata."""
