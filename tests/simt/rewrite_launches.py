#!/usr/bin/env python3
"""Rewrites a CUDA source's kernel launches for the SIMT emulator (simt.h).

    rewrite_launches.py IN.cu OUT.cc

`Kernel<T, 4><<<grid, block, smem, stream>>>(a, b)` becomes
`::shoal::simt::LaunchConfig{grid, block, smem, stream}.Run("Kernel<T, 4>", Kernel<T, 4>, a, b)`;
everything else is copied as it is, behind a #line so compiler messages name the .cu file.
"""
import re
import sys


def kernel_start(text: str, end: int) -> int:
    """Index where the kernel expression ending at `end` (exclusive) begins: identifiers,
    '::' and balanced template arguments, read backwards."""
    i = end
    depth = 0
    while i > 0:
        c = text[i - 1]
        if c == '>':
            depth += 1
        elif c == '<':
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (c.isalnum() or c in '_:'):
            break
        i -= 1
    while i < end and text[i].isspace():
        i += 1
    return i


def matching_close(text: str, start: int, open_: str, close: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise SystemExit(f"unbalanced {open_}{close} after offset {start}")


def rewrite(text: str) -> str:
    out = []
    pos = 0
    for m in re.finditer(r'<<<', text):
        if m.start() < pos:
            continue
        begin = kernel_start(text, m.start())
        cfg_end = text.index('>>>', m.end())
        config = text[m.end():cfg_end]
        paren = cfg_end + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != '(':
            raise SystemExit(f"launch at offset {m.start()} has no argument list")
        close = matching_close(text, paren, '(', ')')
        kernel = text[begin:m.start()].strip()
        args = text[paren + 1:close].strip()
        name = ' '.join(kernel.split())
        call = f'::shoal::simt::LaunchConfig{{{config}}}.Run("{name}", {kernel}' + (f', {args})' if args else ')')
        out.append(text[pos:begin])
        # Keep the line count, so #line stays true for what follows.
        out.append(call + '\n' * text[begin:close + 1].count('\n'))
        pos = close + 1
    out.append(text[pos:])
    return ''.join(out)


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    with open(dst, 'w') as f:
        f.write(f'#line 1 "{src}"\n' + rewrite(text))


if __name__ == '__main__':
    main()
