"""Image operations of the SEISM boundary protocol, batched in torch on the maps' device.

SEISM (Pont-Tuset & Marques, CVPR 2013), as used for NYUD-v2 odsF by ATRC/MQTransformer/InvPT
(docs/protocols.md, "Boundary detection"), reads each predicted edge map and
  1. estimates the edge orientation from second derivatives of a triangle-smoothed copy (radius 4),
  2. applies Dollar's edge non-maximum suppression (radius 1, border fade 5 px, multiplier 1.01),
  3. binarises it with `> threshold` and thins it to one-pixel lines (MATLAB bwmorph 'thin', Inf);
the ground-truth edge map is turned into a boundary map with BSDS `seg2bmap` and thinned likewise.
This module implements those steps from their published descriptions:

* `conv_tri`: separable triangle filter [1..r+1..1]/(r+1)^2 on a symmetrically padded image
  (Piotr Dollar's `convTri`, r >= 2).
* `gradient2`: central differences inside, one-sided differences on the border (MATLAB `gradient`).
* `edge_orientation`: O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi), the normal direction.
* `edge_nms`: a pixel of value e survives unless e * m < the bilinearly interpolated value at
  distance d = 1..r along +-O; then values are faded linearly to zero over the `s` outermost pixels.
* `thin`: the two-subiteration thinning of Lam, Lee & Suen (1992, p. 879), MATLAB's 'thin': pixels
  satisfying G1, G2 and G3 (first subiteration) or G1, G2 and G3' (second) are deleted in parallel,
  repeated until nothing changes. The rule is written down as a 256-entry lookup table on the
  8-neighbourhood (`_thinning_tables`) and evaluated as the equivalent bitwise logic on maps packed
  8 per byte (`_deletions`), in the groups of 8 maps and the rows that recent deletions can have changed.
* `seg2bmap`: a pixel is on the boundary when its label differs from its east, south or south-east
  neighbour (last row: east only; last column: south only; bottom-right corner: never).

All functions take (N,H,W) tensors and work in float32, as the MATLAB/C code does (single precision).

Behaviours kept on purpose because the published pipeline has them: on a perfectly horizontal ridge
sign(-Oxy) = 0, so O = 0 and NMS compares along the ridge instead of across it (thinning still
reduces the band to one line); seg2bmap marks both sides of a one-pixel GT line and thinning keeps
the left/upper one, so the GT moves by one pixel (well inside NYUD's 7.7 px tolerance). Our reading
of Lam et al.'s neighbour numbering: x1 = east (same row, next column), counter-clockwise, with
"north" the previous row, as MATLAB displays images.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

HED_THRESHOLDS = (0.001, *(k / 100 for k in range(1, 100)), 0.999)

# 8-neighbour offsets (drow, dcol) of x1..x8 in Lam et al.: x1 east, then counter-clockwise.
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def boundary_thresholds(count: int) -> tuple[float, ...]:
    """`count` thresholds: 0.001, k/(count-1) for k = 1..count-2, 0.999; count=101 is SEISM's HED set."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 3:
        raise ValueError(f"the number of boundary thresholds must be an int >= 3, got {count!r}")
    return (0.001, *(k / (count - 1) for k in range(1, count - 1)), 0.999)


def _symmetric_index(length: int, pad: int, device: torch.device) -> Tensor:
    """Indices of a MATLAB 'symmetric' padding (edge sample repeated), valid for any pad size."""
    index = torch.arange(-pad, length + pad, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def conv_tri(image: Tensor, radius: int) -> Tensor:
    """Triangle-filter smoothing of (N,H,W) with integer `radius` >= 2 and symmetric borders.

    Written as weighted sums of shifted slices rather than `conv2d`, so that it is plain float32
    arithmetic on every device (cuDNN may run float32 convolutions in TF32 on recent GPUs).
    """
    if radius < 2:
        raise ValueError(f"conv_tri: radius must be an integer >= 2, got {radius}")
    _, height, width = image.shape
    weights = [k / float((radius + 1) ** 2) for k in (*range(1, radius + 2), *range(radius, 0, -1))]
    image = image.float()
    padded = image[:, _symmetric_index(height, radius, image.device)]
    rows = sum(w * padded[:, k : k + height] for k, w in enumerate(weights))
    padded = rows[:, :, _symmetric_index(width, radius, image.device)]
    return sum(w * padded[:, :, k : k + width] for k, w in enumerate(weights))


def _gradient_along(image: Tensor, dim: int) -> Tensor:
    """MATLAB `gradient` with unit spacing along `dim`."""
    size = image.shape[dim]
    grad = torch.zeros_like(image)
    if size < 2:
        return grad
    grad.narrow(dim, 0, 1).copy_(image.narrow(dim, 1, 1) - image.narrow(dim, 0, 1))
    grad.narrow(dim, size - 1, 1).copy_(image.narrow(dim, size - 1, 1) - image.narrow(dim, size - 2, 1))
    if size > 2:
        grad.narrow(dim, 1, size - 2).copy_(
            (image.narrow(dim, 2, size - 2) - image.narrow(dim, 0, size - 2)) / 2
        )
    return grad


def gradient2(image: Tensor) -> tuple[Tensor, Tensor]:
    """(d/dx, d/dy) of (N,H,W): x runs along columns, y along rows."""
    return _gradient_along(image, 2), _gradient_along(image, 1)


def edge_orientation(edges: Tensor) -> Tensor:
    """Normal direction in [0, pi) of each pixel of an edge-strength map (N,H,W)."""
    ox, oy = gradient2(conv_tri(edges, 4))
    oxx, _ = gradient2(ox)
    oxy, oyy = gradient2(oy)
    return torch.remainder(torch.atan(oyy * torch.sign(-oxy) / (oxx + 1e-5)), math.pi)


def _bilinear(flat: Tensor, x: Tensor, y: Tensor, height: int, width: int) -> Tensor:
    """Sample (N,H*W) at float positions clamped to [0, W-1.001] x [0, H-1.001], as edgesNmsMex does."""
    x = x.clamp(0.0, width - 1.001)
    y = y.clamp(0.0, height - 1.001)
    x0f, y0f = x.floor(), y.floor()
    dx0, dy0 = x - x0f, y - y0f
    dx1, dy1 = 1 - dx0, 1 - dy0
    x0, y0 = x0f.long(), y0f.long()
    x1, y1 = x0 + 1, y0 + 1

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return torch.gather(flat, 1, (yy * width + xx).flatten(1)).view_as(x)

    return at(y0, x0) * dx1 * dy1 + at(y0, x1) * dx0 * dy1 + at(y1, x0) * dx1 * dy0 + at(y1, x1) * dx0 * dy0


def _border_fade(edges: Tensor, border: int) -> Tensor:
    """Scale the `border` outermost rows/columns by k/border (k = distance to the image edge)."""
    _, height, width = edges.shape
    border = min(border, width // 2, height // 2)
    if border <= 0:
        return edges
    ramp = torch.arange(border, dtype=torch.float32, device=edges.device) / float(border)
    fx = torch.ones(width, dtype=torch.float32, device=edges.device)
    fy = torch.ones(height, dtype=torch.float32, device=edges.device)
    fx[:border] *= ramp
    fx[width - border :] *= ramp.flip(0)
    fy[:border] *= ramp
    fy[height - border :] *= ramp.flip(0)
    return edges * fx.view(1, 1, -1) * fy.view(1, -1, 1)


def edge_nms(
    edges: Tensor, orientation: Tensor, radius: int = 1, border: int = 5, multiplier: float = 1.01
) -> Tensor:
    """Dollar's edge non-maximum suppression of (N,H,W) edge strengths along `orientation` (N,H,W).

    A pixel with a NaN orientation (0/0 in `edge_orientation`, practically never) is kept.
    """
    _, height, width = edges.shape
    if height < 2 or width < 2:
        raise ValueError(f"edge_nms needs maps of at least 2x2 pixels, got {height}x{width}")
    edges = edges.float()
    nan = torch.isnan(orientation)
    orientation = torch.where(nan, 0.0, orientation.float())
    cos, sin = torch.cos(orientation), torch.sin(orientation)
    ys = torch.arange(height, dtype=torch.float32, device=edges.device).view(1, -1, 1)
    xs = torch.arange(width, dtype=torch.float32, device=edges.device).view(1, 1, -1)
    flat = edges.flatten(1)
    boosted = edges * multiplier
    keep = edges != 0
    for step in range(-radius, radius + 1):
        if step == 0:
            continue
        neighbour = _bilinear(flat, xs + step * cos, ys + step * sin, height, width)
        keep &= ~(boosted < neighbour) | nan
    return _border_fade(torch.where(keep, edges, 0.0), border)


@functools.lru_cache(maxsize=1)
def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations, indexed by sum_i x_i << (i-1) over the 8 neighbours."""
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]

        def x(k: int, bits: list[int] = bits) -> int:  # 1-based, cyclic: x9 = x1
            return bits[(k - 1) % 8]

        crossing = sum(1 for i in range(1, 5) if x(2 * i - 1) == 0 and (x(2 * i) or x(2 * i + 1)))
        n1 = sum(x(2 * k - 1) | x(2 * k) for k in range(1, 5))
        n2 = sum(x(2 * k) | x(2 * k + 1) for k in range(1, 5))
        g1g2 = crossing == 1 and 2 <= min(n1, n2) <= 3
        g3 = ((x(2) | x(3) | (1 - x(8))) & x(1)) == 0
        g3_prime = ((x(6) | x(7) | (1 - x(4))) & x(5)) == 0
        first[code] = g1g2 and g3
        second[code] = g1g2 and g3_prime
    return first, second


def _deletions(
    planes: Tensor | np.ndarray, start: int, length: int, offsets: list[int], second: bool
) -> Tensor | np.ndarray:
    """Deletion bits of the flat pixels [start, start + length) of bit-packed maps (P, L) uint8.

    Operators and slices only, so `planes` may be a torch tensor or a numpy array (same type out).

    The lookup-table conditions (`_thinning_tables`) as bitwise logic on the 8 neighbour planes, so
    one uint8 operation decides 8 maps at once: G1 (crossing number 1), G2 (2 <= min(n1, n2) <= 3)
    and G3 (first subiteration) or G3' (second).
    """

    def x(k: int) -> Tensor | np.ndarray:  # neighbour x_k, 1-based and cyclic (x9 = x1)
        offset = start + offsets[(k - 1) % 8]
        return planes[:, offset : offset + length]

    pairs_n2 = [x(2 * i) | x(2 * i + 1) for i in range(1, 5)]  # the terms of n2
    pairs_n1 = [x(2 * i - 1) | x(2 * i) for i in range(1, 5)]  # the terms of n1
    # G1: exactly one b_i = (not x_{2i-1}) and (x_{2i} or x_{2i+1}), counted with two half adders
    b = [pairs_n2[i - 1] & ~x(2 * i - 1) for i in range(1, 5)]
    sum_a, carry_a, sum_b, carry_b = b[0] ^ b[1], b[0] & b[1], b[2] ^ b[3], b[2] & b[3]
    delete = (sum_a ^ sum_b) & ~(carry_a | carry_b)
    # G2: each count >= 2, and not both counts 4
    all_four = []
    for terms in (pairs_n1, pairs_n2):
        sum_a, carry_a = terms[0] ^ terms[1], terms[0] & terms[1]
        sum_b, carry_b = terms[2] ^ terms[3], terms[2] & terms[3]
        delete &= carry_a | carry_b | (sum_a & sum_b)
        all_four.append(carry_a & carry_b)
    delete &= ~(all_four[0] & all_four[1])
    if second:  # G3': (x6 or x7 or not x4) and x5 == 0
        delete &= ~((x(6) | x(7) | ~x(4)) & x(5))
    else:  # G3: (x2 or x3 or not x8) and x1 == 0
        delete &= ~((x(2) | x(3) | ~x(8)) & x(1))
    return delete & planes[:, start : start + length]


def pack_maps(binary: Tensor) -> Tensor:
    """(N,H,W) bool -> (ceil(N/8), (H+2)(W+2)+2) uint8: bit i of row p holds map 8p+i, zero-padded.

    Each map is padded by one zero pixel on every side and flattened; one extra zero byte at each
    end of a row lets every pixel of the padded image be addressed with its 8 neighbours.
    """
    count = binary.shape[0]
    planes = -(-count // 8)
    maps = F.pad(binary.to(torch.uint8), (1, 1, 1, 1, 0, planes * 8 - count)).view(planes, 8, -1)
    packed = torch.zeros(planes, maps.shape[-1] + 2, dtype=torch.uint8, device=binary.device)
    body = packed[:, 1:-1]
    for bit in range(8):
        body |= maps[:, bit] << bit
    return packed


def _packed_interior(packed: Tensor, height: int, width: int) -> Tensor:
    """The (P,H,W) interior view of `pack_maps` output."""
    return packed[:, 1:-1].view(-1, height + 2, width + 2)[:, 1:-1, 1:-1]


def unpack_maps(packed: Tensor, count: int, height: int, width: int) -> Tensor:
    """Inverse of `pack_maps`: the first `count` maps as (count,H,W) bool."""
    interior = _packed_interior(packed, height, width)
    bits = torch.stack([(interior >> bit) & 1 for bit in range(8)], dim=1)
    return bits.reshape(-1, height, width)[:count].bool()


def packed_pixels(packed: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(map index, row, col) of every on-pixel of `pack_maps` output, each (K,) int64.

    Listed by group of 8 maps, then in raster order, then by map: within one map, in raster order.
    """
    interior = _packed_interior(packed, height, width).contiguous()
    plane, row, col = torch.nonzero(interior, as_tuple=True)
    values = interior.view(-1).index_select(0, (plane * height + row) * width + col)
    bits = torch.arange(8, device=packed.device, dtype=torch.uint8)
    item, bit = torch.nonzero((values[:, None] >> bits) & 1, as_tuple=True)
    plane, row, col = (index.index_select(0, item) for index in (plane, row, col))
    return plane * 8 + bit, row, col


Span = tuple[int, int]  # (first, last), inclusive


def _changed_region(delete: Tensor | np.ndarray, row: int) -> tuple[Span, Span] | None:
    """(planes, rows) spans of a `_deletions` result (rows of `row` bytes) that delete a pixel, or None.

    Two contiguous reductions, the maximum byte of each plane and of each row of the planes OR-ed
    into one; from a device tensor, both come to the host in one transfer.
    """
    if isinstance(delete, np.ndarray):
        plane_flags = delete.max(axis=1)
        row_flags = np.bitwise_or.reduce(delete, axis=0).reshape(-1, row).max(axis=1)
    else:
        flags = torch.cat([delete.amax(1), delete.amax(0).view(-1, row).amax(1)]).cpu().numpy()
        plane_flags, row_flags = flags[: delete.shape[0]], flags[delete.shape[0] :]
    planes, rows = np.flatnonzero(plane_flags), np.flatnonzero(row_flags)
    if planes.size == 0:
        return None
    return (int(planes[0]), int(planes[-1])), (int(rows[0]), int(rows[-1]))


def _next_region(
    changed: tuple[Span, Span] | None, previous: tuple[Span, Span] | None, height: int
) -> tuple[Span, Span] | None:
    """(planes, rows 1..height in padded numbering) the next subiteration examines; None: converged.

    The next subiteration applies the deletion rule last evaluated two subiterations ago. A pixel
    whose 3x3 neighbourhood has not changed since then gets the same answer (kept), so only the
    planes that deleted pixels in the last two subiterations, in the rows within one of those
    deletions, are examined again; with neither deleting anything, both rules are at a fixed point.
    """
    regions = [region for region in (changed, previous) if region is not None]
    if not regions:
        return None
    planes = min(r[0][0] for r in regions), max(r[0][1] for r in regions)
    rows = max(1, min(r[1][0] for r in regions) - 1), min(height, max(r[1][1] for r in regions) + 1)
    return planes, rows


def thin_packed(packed: Tensor, height: int, width: int) -> Tensor:
    """`thin` in place on maps packed by `pack_maps`; returns `packed`.

    On CPU the same operator code runs on a numpy view of `packed` (shared memory, so the update
    lands in `packed`): on these small arrays each operation is dispatch-bound, and numpy's dispatch
    costs a fraction of torch's. After the first two subiterations (everything, once per rule)
    each subiteration examines only the planes, and the band of rows, next to recent deletions
    (`_next_region`): a thick blob is peeled from the outside in, so the band shrinks with it, and
    planes whose 8 maps have all converged drop out at either end of the range.
    """
    planes = packed.numpy() if packed.device.type == "cpu" else packed
    row = width + 2
    offsets = [dr * row + dc for dr, dc in _NEIGHBOURS]
    everything = ((0, planes.shape[0] - 1), (1, height))  # padded rows 1..H (padding columns stay 0)
    region: tuple[Span, Span] | None = everything
    previous: tuple[Span, Span] | None = everything  # the second rule's first pass covers everything
    second = False
    while region is not None:
        (plane_lo, plane_hi), (first, last) = region
        active = planes[plane_lo : plane_hi + 1]
        start, length = 1 + first * row, (last - first + 1) * row
        delete = _deletions(active, start, length, offsets, second)
        changed = _changed_region(delete, row)
        if changed is not None:
            active[:, start : start + length] &= ~delete
            (lo, hi), (top, bottom) = changed
            changed = (plane_lo + lo, plane_lo + hi), (first + top, first + bottom)
        region, previous = _next_region(changed, previous, height), changed
        second = not second
    return packed


def thin(binary: Tensor) -> Tensor:
    """MATLAB bwmorph(binary, 'thin', Inf) on each map of a (N,H,W) boolean tensor.

    The maps are bit-packed, 8 per byte (`pack_maps`), and every subiteration evaluates the deletion
    conditions of every pixel that recent deletions can have changed (the byte planes and band of
    rows of `thin_packed`) with about 50 array-wide bitwise operations (`_deletions`): no
    per-pixel indexing, and each map costs an eighth of a byte per pixel. Maps that have converged
    are simply left unchanged by later subiterations. Stops when two subiterations in a row (one of
    each rule) delete nothing in any map.
    """
    count, height, width = binary.shape
    if count == 0:
        return binary.bool().clone()
    return unpack_maps(thin_packed(pack_maps(binary), height, width), count, height, width)


def seg2bmap(labels: Tensor) -> Tensor:
    """BSDS boundary map of label maps (N,H,W): label differs from the east, south or south-east pixel."""
    east = torch.zeros_like(labels)
    south = torch.zeros_like(labels)
    south_east = torch.zeros_like(labels)
    east[:, :, :-1] = labels[:, :, 1:]
    south[:, :-1, :] = labels[:, 1:, :]
    south_east[:, :-1, :-1] = labels[:, 1:, 1:]
    boundary = (labels != east) | (labels != south) | (labels != south_east)
    boundary[:, -1, :] = labels[:, -1, :] != east[:, -1, :]
    boundary[:, :, -1] = labels[:, :, -1] != south[:, :, -1]
    boundary[:, -1, -1] = False
    return boundary
