"""The VSE++ authors' released models (fartashf/vsepp): read without torch, rebuilt in Keras."""
