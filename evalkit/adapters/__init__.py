"""Task sources evalkit reads: Harbor registries and task directories (`evalkit.adapters.harbor`)."""
