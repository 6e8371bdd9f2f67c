"""The contracts that training, index and service share, in one light library.

The model directory (`model_dir`: manifest, exported encoders, their interface; `embed`:
embedding files and captions in batches), the one image decoder (`images`), the dataset
readers and their flags (`datasets`), the R@K protocol (`evaluation`), atomic writes
(`atomic`) and the command-line conventions (`cli`). NumPy, Pillow and TensorFlow only:
nothing of the training loop, FAISS or the web service.
"""
