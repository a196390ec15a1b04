"""What a fit measures, for people: the count, size statistics, and the read-out files (tables, label images,
ImageJ ROIs)."""
