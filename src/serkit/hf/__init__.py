"""serkit and Hugging Face `transformers`: serkit models as Auto classes (auto), registered when transformers
is imported (hook), and the export to a directory `pipeline("audio-classification")` loads (export)."""
