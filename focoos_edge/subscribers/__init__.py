"""What subscribers consume besides the detections: retained counts, annotated snapshots, Home
Assistant discovery."""
