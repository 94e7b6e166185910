"""Compiled hints to the CPU to start loading a matrix row (or a graph node's links) before it is needed.

Scanning shortlists reads vector rows scattered over a large matrix: the loads, not the
arithmetic, set the pace. Asking for row i+d while computing row i hides most of that latency.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LINE = 64  # bytes per cache line


@intrinsic
def prefetch_row(typingctx, matrix, row):
    """Hint that matrix[row, :] (a C-contiguous 2-d array) will be read soon."""
    if not isinstance(matrix, types.Array) or matrix.ndim != 2 or not isinstance(row, types.Integer):
        return None
    sig = types.void(matrix, row)

    def codegen(context, builder, signature, args):
        array, bytes_ptr, itemsize = _element(context, builder, signature, args, 2)
        n_cols = builder.extract_value(array.shape, 1)
        _hint_span(context, builder, bytes_ptr, builder.mul(n_cols, itemsize))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_span(typingctx, array, start, count):
    """Hint that array[start:start + count] of a 1-d array will be read soon (a row of a matrix
    kept flat: scalar codes, centroids)."""
    if not isinstance(array, types.Array) or array.ndim != 1 or not all(
            isinstance(a, types.Integer) for a in (start, count)):
        return None
    sig = types.void(array, start, count)

    def codegen(context, builder, signature, args):
        _, bytes_ptr, itemsize = _element(context, builder, signature, args, 1)
        count = context.cast(builder, args[2], signature.args[2], types.intp)
        _hint_span(context, builder, bytes_ptr, builder.mul(count, itemsize))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_at(typingctx, array, index):
    """Hint that the four cache lines from array[index] of a 1-d array will be read soon (a graph
    node's links; a shortlist's member slots, up to 64 of them)."""
    if not isinstance(array, types.Array) or array.ndim != 1 or not isinstance(index, types.Integer):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        _, bytes_ptr, _ = _element(context, builder, signature, args, 1)
        for line in range(4):
            _hint(context, builder, bytes_ptr, line)
        return context.get_dummy_value()

    return sig, codegen


def _element(context, builder, signature, args, ndim: int):
    """(In an intrinsic's codegen.) For an intrinsic whose arguments are an array and an index
    (its first, for `ndim` 2: a row's): the array, the element's address as bytes, and the size
    of an element (an intp constant)."""
    array_type = signature.args[0]
    array = context.make_array(array_type)(context, builder, args[0])
    index = context.cast(builder, args[1], signature.args[1], types.intp)
    at = [index] + [context.get_constant(types.intp, 0)] * (ndim - 1)
    start = cgutils.get_item_pointer(context, builder, array_type, array, at, wraparound=False)
    itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(array_type.dtype)))
    return array, builder.bitcast(start, ir.IntType(8).as_pointer()), itemsize


def _hint_span(context, builder, bytes_ptr, size) -> None:
    """(In an intrinsic's codegen.) Hints for the `size` bytes from `bytes_ptr`: their first and
    last bytes, which are every line of a span of up to two lines (a scalar code of up to 64
    dimensions; the hot case, kept free of branches); a longer span, a hint per line between them
    as well (spans of up to 16 lines are covered; longer ones partly)."""
    _hint(context, builder, bytes_ptr, 0)
    last = builder.sub(size, context.get_constant(types.intp, 1))
    _hint_at(builder, builder.gep(bytes_ptr, [last]))
    with builder.if_then(builder.icmp_signed(">", size, context.get_constant(types.intp, 2 * _LINE))):
        for line in range(1, 16):
            offset = context.get_constant(types.intp, line * _LINE)
            with builder.if_then(builder.icmp_signed("<", offset, last)):
                _hint(context, builder, bytes_ptr, line)


def _hint(context, builder, bytes_ptr, line: int) -> None:
    """(In an intrinsic's codegen.) llvm.prefetch of the cache line `line` lines past `bytes_ptr`."""
    _hint_at(builder, builder.gep(bytes_ptr, [context.get_constant(types.intp, line * _LINE)]))


def _hint_at(builder, address) -> None:
    """(In an intrinsic's codegen.) llvm.prefetch of the cache line holding `address`: a read, kept
    in every cache level."""
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3)
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [address, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                      ir.Constant(ir.IntType(32), 1)])
