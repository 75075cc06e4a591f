"""Flags SASS instructions that write a register an in-flight wgmma (HGMMA) still reads as its A operand.

wgmma reads register operands asynchronously: they must keep their values until the wgmma_wait that covers
the product (PTX ISA, wgmma.mma_async). ptxas does not enforce it; the forward once packed the next tile's P
into the registers P·V was reading (o wrong with fewer registers, right by luck with more). This scans each
kernel's SASS linearly from every HGMMA with a register A operand (four registers from the one named) to the
next `WARPGROUP.DEPBAR.LE gsb0, 0x0` on the fall-through path (a wait reached only by a jump does not end the
scan) and prints the writes to those registers in between. A heuristic, not a proof: it follows no branches.

    nvcc -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 --cubin -o k.cubin host/kernels/attention_sm90.cu
    cuobjdump -sass k.cubin > k.sass      # pip: nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm
    python3 bench/gpu/wgmma_register_check.py k.sass     # exit status 1 when a write is found
"""
import re
import sys


def writes_to_in_flight_a(function_sass):
    """(address, instruction) pairs that write an A register of an HGMMA not yet waited for."""
    found, pending, previous = [], set(), ""
    for addr, line in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", function_sass):
        line = line.strip()
        after_jump = previous.startswith("BRA ")
        previous = line
        hgmma = re.match(r"(@!?U?P\d+\s+)?HGMMA\.\S+\s+R(\d+),\s+R(\d+),", line)
        if hgmma:
            first = int(hgmma.group(3))
            pending |= set(range(first, first + 4))
            continue
        if "WARPGROUP.DEPBAR.LE gsb0, 0x0" in line and not after_jump:
            pending = set()
            continue
        dest = re.match(r"(@!?U?P\w+\s+)?[A-Z0-9_.]+\s+R(\d+)\b", line)
        if dest and pending and int(dest.group(2)) in pending:
            found.append((addr, line))
    return found


def main():
    text = open(sys.argv[1]).read()
    bad = 0
    for function in re.split(r"\n\s*Function : ", text)[1:]:
        name = function.split("\n", 1)[0].strip()
        found = writes_to_in_flight_a(function)
        if "HGMMA" in function:
            print(f"{name}: {len(found)} write(s) to in-flight A registers", *found[:3], sep="\n  " if found else "")
        bad += len(found)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
