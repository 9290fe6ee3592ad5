"""The asset layer, one module per stage in data-flow order: catalog → splits → datasets → classifier
→ reports. Each asset reads its inputs, calls the core, writes its output and returns metadata."""
