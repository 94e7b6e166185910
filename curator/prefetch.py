"""A compiled hint to the CPU to start loading a matrix row before it is needed.

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
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        row_index = context.cast(builder, args[1], signature.args[1], types.intp)
        start = cgutils.get_item_pointer(context, builder, array_type, array, [row_index, zero], wraparound=False)
        bytes_ptr = builder.bitcast(start, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
        n_cols = builder.extract_value(array.shape, 1)
        size = builder.mul(n_cols, context.get_constant(types.intp, itemsize))
        # one hint per cache line of the row (rows of up to 16 lines are covered; longer ones partly)
        for line in range(16):
            offset = context.get_constant(types.intp, line * _LINE)
            with builder.if_then(builder.icmp_signed("<", offset, size)):
                address = builder.gep(bytes_ptr, [offset])
                builder.call(fn, [address, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                                  ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return sig, codegen
