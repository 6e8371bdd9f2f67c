"""VSE++ training: datasets, text, input pipeline, model, loss, evaluation and export."""
