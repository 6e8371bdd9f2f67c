"""The reference of the evaluation tests and benchmark: fartashf/vsepp's evaluation.py
i2t/t2i, one query at a time (with the two changes said below)."""

from __future__ import annotations

import numpy as np

# Changes from the original: images are given once (not repeated 5x) and the sort is
# stable, which is the tie rule the vectorised code documents.


def naive_order_row(im: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Order scores of one image against many captions."""
    diff = np.maximum(caps - im[np.newaxis, :], 0.0)
    return -np.sqrt((diff * diff).sum(axis=1))


def naive_order_col(ims: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Order scores of one caption against many images."""
    diff = np.maximum(cap[np.newaxis, :] - ims, 0.0)
    return -np.sqrt((diff * diff).sum(axis=1))


def naive_i2t(images: np.ndarray, captions: np.ndarray, measure: str = "cosine") -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    captions = np.asarray(captions, dtype=np.float64)
    ranks = np.zeros(images.shape[0])
    for index in range(images.shape[0]):
        if measure == "order":
            d = naive_order_row(images[index], captions)
        else:
            d = np.dot(images[index].reshape(1, -1), captions.T).flatten()
        inds = np.argsort(d, kind="stable")[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    return ranks


def naive_t2i(images: np.ndarray, captions: np.ndarray, measure: str = "cosine") -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    captions = np.asarray(captions, dtype=np.float64)
    ranks = np.zeros(captions.shape[0])
    for index in range(images.shape[0]):
        queries = captions[5 * index : 5 * index + 5]
        if measure == "order":
            d = np.stack([naive_order_col(images, q) for q in queries])
        else:
            d = np.dot(queries, images.T)
        for i in range(len(d)):
            inds = np.argsort(d[i], kind="stable")[::-1]
            ranks[5 * index + i] = np.where(inds == index)[0][0]
    return ranks


def naive_metrics(ranks: np.ndarray) -> tuple[float, ...]:
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    medr = np.floor(np.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr)
