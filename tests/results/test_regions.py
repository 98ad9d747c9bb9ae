"""Outlines: the batched Douglas-Peucker simplification against independent
computations (scikit-image's own implementation, and the distance bound
checked point by point), and whole-volume outlines against slice by slice."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

from dicomnode.results.regions import outlines, simplify, slice_outlines


def blobs(seed: int, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """Random smooth regions with holes and several parts."""
    rng = np.random.default_rng(seed)
    sigma = (0, 3, 3) if len(shape) == 3 else 3
    return np.asarray(ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5)


def chains(seed: int) -> list[NDArray[np.float64]]:
    found: list[NDArray[np.float64]] = []
    for index in range(6):
        plane = np.pad(blobs(seed * 10 + index, (48, 48)).astype(np.float32), 1)
        found.extend(find_contours(plane, 0.5))
    rng = np.random.default_rng(seed)
    found.append(np.cumsum(rng.normal(size=(200, 2)), axis=0))  # an open random walk
    found.append(np.zeros((0, 2)))
    found.append(np.array([[1.0, 2.0]]))
    found.append(np.array([[1.0, 2.0], [3.0, 4.0]]))
    return found


def distance_to_chain(
    points: NDArray[np.float64], chain: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Each point's distance to the nearest segment of ``chain`` (brute force)."""
    a, b = chain[:-1][None], chain[1:][None]
    p = points[:, None]
    ab = b - a
    length = np.maximum((ab**2).sum(axis=-1), 1e-300)
    t = np.clip(((p - a) * ab).sum(axis=-1) / length, 0.0, 1.0)
    nearest = a + t[..., None] * ab
    return np.asarray(np.sqrt(((p - nearest) ** 2).sum(axis=-1)).min(axis=1))


@pytest.mark.parametrize("tolerance", [0.5, 2.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simplify_keeps_what_scikit_image_keeps(seed: int, tolerance: float) -> None:
    given = chains(seed)
    got = simplify(given, tolerance)
    assert len(got) == len(given)
    for chain, simplified in zip(given, got, strict=True):
        expected = approximate_polygon(chain, tolerance) if len(chain) else chain
        np.testing.assert_array_equal(simplified, expected)


@pytest.mark.parametrize("seed", [4, 5])
def test_every_dropped_point_lies_within_the_tolerance(seed: int) -> None:
    for chain, simplified in zip(chains(seed), simplify(chains(seed), 1.0), strict=True):
        if len(chain) < 2:
            np.testing.assert_array_equal(simplified, chain)
            continue
        # ends kept, points a subsequence of the chain's, in order
        assert tuple(simplified[0]) == tuple(chain[0])
        assert tuple(simplified[-1]) == tuple(chain[-1])
        position = 0
        for point in simplified[1:]:
            later = np.flatnonzero((chain[position + 1 :] == point).all(axis=1))
            assert later.size, f"{point} is not a later point of the chain"
            position += 1 + int(later[0])
        if len(simplified) > 1 and np.ptp(simplified, axis=0).any():
            assert distance_to_chain(chain, simplified).max() <= 1.0 + 1e-9


def test_a_rectangle_is_four_corners_on_its_pixel_edges() -> None:
    plane = np.zeros((10, 10), dtype=bool)
    plane[2:7, 3:9] = True  # rows 2-6, columns 3-8: x from 3 to 9, y from 2 to 7
    (rectangle,) = outlines(plane, 5)
    assert rectangle.index == 5
    points = rectangle.points.astype(np.float64)
    assert tuple(points[0]) == tuple(points[-1])  # closed
    assert len({tuple(p) for p in points.tolist()}) == 4
    x, y = points[:, 0], points[:, 1]
    assert ((x >= 3.0) & (x <= 9.0) & (y >= 2.0) & (y <= 7.0)).all()
    # each corner within the tolerance (half a pixel) of the rectangle's corner
    to_edge = np.minimum.reduce([abs(x - 3.0), abs(x - 9.0), abs(y - 2.0), abs(y - 7.0)])
    assert (to_edge == 0).all()
    corners = np.array([[3.0, 2.0], [9.0, 2.0], [9.0, 7.0], [3.0, 7.0]])
    for corner in corners:
        assert np.sqrt(((points - corner) ** 2).sum(axis=1)).min() <= 0.5 + 1e-9


def test_volume_outlines_are_each_slices_outlines() -> None:
    mask = blobs(7, (12, 40, 40))
    mask[3] = False  # an empty slice has none
    expected = [item for index in range(mask.shape[0]) for item in outlines(mask[index], index)]
    got = slice_outlines(mask)
    assert [item.index for item in got] == [item.index for item in expected]
    assert 3 not in {item.index for item in got}
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
