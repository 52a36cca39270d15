"""Numba kernels of the batched shape predictor (see shape_engine.py): a reader of dlib's
portable serialisation and the cascade itself, written to give dlib's numbers bit for bit.

Every float32 / float64 below mirrors the type dlib computes in (dlib/image_processing/
shape_predictor.h, dlib/geometry/point_transforms.h); numba keeps float32 arithmetic in
float32 as long as no Python float literal or float64 value enters the expression, and it
never fuses a multiply and an add (no fastmath), like the dlib build (no FMA instructions).

The kernels are compiled on first use and cached on disk (numba's cache=True: in
$NUMBA_CACHE_DIR when set, else __pycache__ next to this file, else, for a read-only
install, numba's user-wide folder ~/.cache/numba); where no cache folder can be written
they are compiled in memory, in each process."""

from __future__ import annotations

import math

import numpy as np

from maskgen.compiled import njit_cached

_jit = njit_cached


# ------------------------------------------------------------------------------------------
# dlib/serialize.h: integers are a control byte (size in the low 4 bits, sign in bit 7)
# then that many little-endian bytes; a float is a float_details (int64 mantissa, int16
# exponent), value = ldexp((float)mantissa, exponent). Every reader returns the position
# after the item, or -1 when the bytes are not what dlib would have accepted.


@_jit(nogil=True)
def read_int(buf, pos):
    """A signed integer (dlib's unpack_int for a signed type of 8 bytes)."""
    if pos < 0 or pos >= buf.shape[0]:
        return np.int64(0), np.int64(-1)
    ctrl = np.int64(buf[pos])
    negative = (ctrl & 0x80) != 0
    size = ctrl & 0x0F
    if size == 0 or size > 8 or pos + 1 + size > buf.shape[0]:
        return np.int64(0), np.int64(-1)
    value = np.int64(0)
    for i in range(size - 1, -1, -1):
        value = (value << np.int64(8)) | np.int64(buf[pos + 1 + i])
    if negative:
        value = -value
    return value, np.int64(pos + 1 + size)


@_jit(nogil=True)
def read_uint(buf, pos):
    """An unsigned integer (dlib's unpack_int for an unsigned type: the 3 reserved bits are
    masked off, a set sign bit is an error)."""
    if pos < 0 or pos >= buf.shape[0]:
        return np.int64(0), np.int64(-1)
    size = np.int64(buf[pos]) & 0x8F
    if size == 0 or size > 8 or pos + 1 + size > buf.shape[0]:
        return np.int64(0), np.int64(-1)
    value = np.int64(0)
    for i in range(size - 1, -1, -1):
        value = (value << np.int64(8)) | np.int64(buf[pos + 1 + i])
    return value, np.int64(pos + 1 + size)


@_jit(nogil=True)
def read_float(buf, pos):
    """A float in dlib's binary format, converted as float_details::operator float()."""
    if pos < 0 or pos >= buf.shape[0] or (buf[pos] & 0x70) != 0:  # 0x70 set: the old ASCII format
        return np.float32(0), np.int64(-1)
    mantissa, pos = read_int(buf, pos)
    exponent, pos = read_int(buf, pos)
    if pos < 0 or exponent < -32768 or exponent > 32767:  # an int16 in dlib
        return np.float32(0), np.int64(-1)
    if exponent < 32000:
        # ldexp((float)m, e): the float conversion rounds once; the scaling by 2**e is exact
        # in double and the final cast rounds once more only where float's ldexp would.
        return np.float32(math.ldexp(np.float64(np.float32(mantissa)), exponent)), pos
    if exponent == 32000:
        return np.float32(np.inf), pos
    if exponent == 32001:
        return np.float32(-np.inf), pos
    return np.float32(np.nan), pos


@_jit(nogil=True)
def read_floats(buf, pos, out):
    """len(out) floats in a row."""
    for i in range(out.shape[0]):
        out[i], pos = read_float(buf, pos)
        if pos < 0:
            return np.int64(-1)
    return pos


@_jit(nogil=True)
def read_uints(buf, pos, out):
    """len(out) unsigned integers in a row, into an int32 array (indices)."""
    for i in range(out.shape[0]):
        value, pos = read_uint(buf, pos)
        if pos < 0 or value > 2147483647:
            return np.int64(-1)
        out[i] = value
    return pos


@_jit(nogil=True)
def read_column(buf, pos, out):
    """A matrix<float,0,1> of len(out) rows: nr, nc (negated in dlib's newer format), values."""
    nr, pos = read_int(buf, pos)
    nc, pos = read_int(buf, pos)
    if pos < 0 or abs(nr) != out.shape[0] or abs(nc) != 1:
        return np.int64(-1)
    return read_floats(buf, pos, out)


@_jit(nogil=True)
def read_tree(buf, pos, idx, thresh, leaves):
    """One impl::regression_tree: splits (idx1, idx2, thresh) then leaf_values, of exactly
    the sizes of the output arrays (idx: (S, 2) int32, thresh: (S,), leaves: (S + 1, D))."""
    n_splits, pos = read_uint(buf, pos)
    if pos < 0 or n_splits != idx.shape[0]:
        return np.int64(-1)
    for s in range(n_splits):
        for k in range(2):
            value, pos = read_uint(buf, pos)
            if pos < 0 or value > 2147483647:
                return np.int64(-1)
            idx[s, k] = value
        thresh[s], pos = read_float(buf, pos)
        if pos < 0:
            return np.int64(-1)
    n_leaves, pos = read_uint(buf, pos)
    if pos < 0 or n_leaves != leaves.shape[0]:
        return np.int64(-1)
    for j in range(n_leaves):
        pos = read_column(buf, pos, leaves[j])
        if pos < 0:
            return np.int64(-1)
    return pos


# ------------------------------------------------------------------------------------------
# The cascade.


@_jit(nogil=True)
def _unnormalizing(box, pinv, out):
    """impl::unnormalizing_tform(rect): find_affine_transform from (0,0), (1,0), (1,1) to the
    rect's tl, tr, br corners, i.e. m = Q * pinv(P) with P fixed; dlib's pinv (an SVD) is not
    exact, so the product is formed from its very doubles, in dlib's order of summation.
    box: float64 (l, t, r, b), each a float32 value (the corners become vector<float,2>).
    out: m00, m01, m10, m11, b0, b1."""
    left, top, right, bottom = box[0], box[1], box[2], box[3]
    for j in range(3):
        x = left * pinv[0, j]
        x += right * pinv[1, j]
        x += right * pinv[2, j]
        y = top * pinv[0, j]
        y += top * pinv[1, j]
        y += bottom * pinv[2, j]
        if j == 2:
            out[4] = x
            out[5] = y
        else:
            out[j] = x  # m(0, j)
            out[2 + j] = y  # m(1, j)


@_jit(nogil=True)
def _round_half_up(value):
    """dlib's double -> long point conversion: static_cast<long>(std::floor(v + 0.5))."""
    return np.int64(math.floor(value + 0.5))


_ONE = np.uint64(1)  # unsigned indices: numba then skips its negative-index wraparound
GROUP = 8  # trees whose leaves are summed into a face's shape in one pass (in registers)


@_jit(nogil=True)
def predict(pixels, offsets, heights, widths, image_of, boxes, pinv, initial, split_idx1, split_idx2, split_ithresh,
            leaves, anchors2, deltas, out):
    """Run the cascade for every box.

    pixels: uint8, every grey image flattened one after the other (row-major); image k
      starts at offsets[k] and is heights[k] x widths[k].
    image_of: (N,) int64, the image of each box. boxes: (N, 4) float64 l, t, r, b.
    pinv: (3, 3) float64, dlib's pinv of the fixed point matrix of unnormalizing_tform.
    initial: (D,) float32 mean shape, D = 2 * parts, x then y per part.
    split_idx1, split_idx2: (L, T, S) uint16 feature pixel indices of each split.
    split_ithresh: (L, T, S) int32, the split thresholds as integers: dlib tests
      (float)a - (float)b > thresh on pixel values, exactly (int)a - (int)b > floor(thresh).
    leaves: (L, T, S + 1, D) float32. anchors2: (L, F) uint64, twice the anchor part index.
    deltas: (L, F, 2) float32.
    out: (N, parts, 2) float32, the rounded part coordinates (dlib's full_object_detection.parts()).
    """
    n_boxes = boxes.shape[0]
    n_levels, n_trees, n_splits = split_ithresh.shape[0], split_ithresh.shape[1], split_ithresh.shape[2]
    n_features = anchors2.shape[1]
    dim = initial.shape[0]
    n_parts = dim // 2
    last_split = np.uint64(n_splits)

    # find_similarity_transform(initial, current): the "from" side is the same for every
    # face and level: its mean and centred points in double (vector<float> - vector<double>).
    mean_fx = 0.0
    mean_fy = 0.0
    for j in range(n_parts):
        mean_fx += np.float64(initial[2 * j])
        mean_fy += np.float64(initial[2 * j + 1])
    mean_fx /= n_parts
    mean_fy /= n_parts
    from_x = np.empty(n_parts, np.float64)
    from_y = np.empty(n_parts, np.float64)
    sigma_from = 0.0
    for j in range(n_parts):
        from_x[j] = np.float64(initial[2 * j]) - mean_fx
        from_y[j] = np.float64(initial[2 * j + 1]) - mean_fy
        sigma_from += from_x[j] * from_x[j] + from_y[j] * from_y[j]
    sigma_from /= n_parts

    unnorm = np.empty((n_boxes, 6), np.float64)
    for n in range(n_boxes):
        _unnormalizing(boxes[n], pinv, unnorm[n])

    shapes = np.empty((n_boxes, dim), np.float32)
    for n in range(n_boxes):
        for k in range(dim):
            shapes[n, k] = initial[k]
    features = np.empty((n_boxes, n_features), np.int16)
    which = np.empty(GROUP, np.uint64)
    depth = 0  # of the trees: n_splits = 2**depth - 1 (dlib's trees are complete)
    while (1 << depth) - 1 < n_splits:
        depth += 1

    for level in range(n_levels):
        # extract_feature_pixel_values for every face
        anchors_l = anchors2[level]
        deltas_l = deltas[level]
        for n in range(n_boxes):
            shape = shapes[n]
            feats = features[n]
            t00, t01, t10, t11 = _similarity(shape, from_x, from_y, sigma_from, n_parts)
            u0, u1, u2, u3, u4, u5 = unnorm[n, 0], unnorm[n, 1], unnorm[n, 2], unnorm[n, 3], unnorm[n, 4], unnorm[n, 5]
            img = image_of[n]
            base, h, w = offsets[img], heights[img], widths[img]
            for f in range(n_features):
                a = anchors_l[f]
                dx = deltas_l[f, 0]
                dy = deltas_l[f, 1]
                # tform*delta + location(current_shape, anchor), all in float
                px = t00 * dx
                px += t01 * dy
                px = px + shape[a]
                py = t10 * dx
                py += t11 * dy
                py = py + shape[a + _ONE]
                # tform_to_img(p) = m*p + b in double, then rounded to a point
                qx = u0 * np.float64(px)
                qx += u1 * np.float64(py)
                qx = qx + u4
                qy = u2 * np.float64(px)
                qy += u3 * np.float64(py)
                qy = qy + u5
                ix = _round_half_up(qx)
                iy = _round_half_up(qy)
                value = np.int16(0)  # outside the image: 0
                if ix >= 0 and iy >= 0 and ix < w and iy < h:
                    value = np.int16(pixels[np.uint64(base + iy * w + ix)])
                feats[f] = value

        # The trees of the level, GROUP at a time over all faces while their leaves are in
        # cache: each face walks the GROUP trees, then adds their leaves to its shape one
        # after the other, in dlib's tree order, in float32 - the very sums dlib forms.
        t0 = 0
        while t0 + GROUP <= n_trees:
            for n in range(n_boxes):
                feats = features[n]
                # the GROUP trees walked in step, a depth at a time: independent chains of
                # loads the CPU overlaps (one tree after the other: a tenth slower)
                for g in range(GROUP):
                    which[g] = np.uint64(0)
                for _ in range(depth):
                    for g in range(GROUP):
                        i = which[g]
                        go_right = np.int32(feats[split_idx1[level, t0 + g, i]]) - np.int32(feats[split_idx2[level, t0 + g, i]]) <= split_ithresh[level, t0 + g, i]
                        which[g] = i + i + _ONE + np.uint64(go_right)
                for g in range(GROUP):
                    which[g] -= last_split
                l0 = leaves[level, t0, which[0]]
                l1 = leaves[level, t0 + 1, which[1]]
                l2 = leaves[level, t0 + 2, which[2]]
                l3 = leaves[level, t0 + 3, which[3]]
                l4 = leaves[level, t0 + 4, which[4]]
                l5 = leaves[level, t0 + 5, which[5]]
                l6 = leaves[level, t0 + 6, which[6]]
                l7 = leaves[level, t0 + 7, which[7]]
                shape = shapes[n]
                for k in range(dim):
                    v = shape[k]
                    v += l0[k]
                    v += l1[k]
                    v += l2[k]
                    v += l3[k]
                    v += l4[k]
                    v += l5[k]
                    v += l6[k]
                    v += l7[k]
                    shape[k] = v
            t0 += GROUP
        for t in range(t0, n_trees):
            for n in range(n_boxes):
                leaf = leaves[level, t, _leaf(features[n], split_idx1[level, t], split_idx2[level, t],
                                              split_ithresh[level, t], last_split)]
                shape = shapes[n]
                for k in range(dim):
                    shape[k] += leaf[k]

    for n in range(n_boxes):
        u = unnorm[n]
        for j in range(n_parts):
            x = np.float64(shapes[n, 2 * j])
            y = np.float64(shapes[n, 2 * j + 1])
            qx = u[0] * x
            qx += u[1] * y
            qx = qx + u[4]
            qy = u[2] * x
            qy += u[3] * y
            qy = qy + u[5]
            out[n, j, 0] = np.float32(_round_half_up(qx))
            out[n, j, 1] = np.float32(_round_half_up(qy))


@_jit(nogil=True)
def _leaf(feats, idx1, idx2, ithresh, n_splits):
    """regression_tree::operator(): the leaf a face's feature pixels lead to (branch-free:
    the left child 2i+1 when the pixel difference is over the threshold, else 2i+2)."""
    i = np.uint64(0)
    while i < n_splits:
        i = i + i + _ONE + np.uint64(np.int32(feats[idx1[i]]) - np.int32(feats[idx2[i]]) <= ithresh[i])
    return i - n_splits


@_jit(nogil=True)
def _similarity(shape, from_x, from_y, sigma_from, n_parts):
    """matrix_cast<float>(find_tform_between_shapes(initial, shape).get_m()).

    dlib solves Umeyama's least squares with an SVD of the 2x2 covariance; its result
    c*R equals the closed form [[a, -b], [b, a]], a = (cov00 + cov11) / sigma_from,
    b = (cov10 - cov01) / sigma_from, in exact arithmetic, and the two differ by a few ulps
    of a double, which the cast to float absorbs."""
    if n_parts == 1:
        return np.float32(1), np.float32(0), np.float32(0), np.float32(1)
    mean_tx = 0.0
    mean_ty = 0.0
    for j in range(n_parts):
        mean_tx += np.float64(shape[2 * j])
        mean_ty += np.float64(shape[2 * j + 1])
    mean_tx /= n_parts
    mean_ty /= n_parts
    c00 = 0.0
    c01 = 0.0
    c10 = 0.0
    c11 = 0.0
    for j in range(n_parts):
        tx = np.float64(shape[2 * j]) - mean_tx
        ty = np.float64(shape[2 * j + 1]) - mean_ty
        c00 += tx * from_x[j]
        c01 += tx * from_y[j]
        c10 += ty * from_x[j]
        c11 += ty * from_y[j]
    c00 /= n_parts
    c01 /= n_parts
    c10 /= n_parts
    c11 /= n_parts
    if sigma_from == 0:
        a = c00 + c11
        b = c10 - c01
        scale = math.hypot(a, b)
        if scale == 0:
            return np.float32(1), np.float32(0), np.float32(0), np.float32(1)
        a /= scale
        b /= scale
    else:
        a = (c00 + c11) / sigma_from
        b = (c10 - c01) / sigma_from
    return np.float32(a), np.float32(-b), np.float32(b), np.float32(a)
