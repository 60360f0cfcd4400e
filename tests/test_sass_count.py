"""``tests/sass_count.py``: the key-loop counting method, on hand-written SASS shaped like our
kernel's loop (a conditional rescale skipped) and like FlashAttention-2's (a prefetch kept out of
line before the loop, a loop exit that must not count)."""

from __future__ import annotations

from sass_count import loop_counts, parse_sass


def sass(lines: list[str]) -> str:
    """cuobjdump-style text: one instruction every 0x10 bytes from 0x0000."""
    return "\n".join(
        f"        /*{16 * i:04x}*/                   {line} ;   /* 0x000000000000794d */"
        for i, line in enumerate(lines)
    )


def test_the_rescale_branch_is_skipped_and_counted_apart():
    code = parse_sass(
        sass(
            [
                "MOV R0, R1",  # 0x00, before the loop
                "HMMA.16816.F32 R4, R8, R12, R4",  # 0x10 loop start
                "MUFU.EX2 R2, R3",  # 0x20
                "@P0 BRA 0x60",  # 0x30 skip the rescale (taken in the steady state)
                "FMUL R4, R4, R5",  # 0x40 rescale
                "FMUL R6, R6, R5",  # 0x50 rescale
                "FFMA R7, R2, R3, R7",  # 0x60
                "@P1 BRA 0x10",  # 0x70 back edge
                "EXIT",  # 0x80
            ]
        )
    )
    counts = loop_counts(code, logits_per_thread=2)
    assert counts["body"] == 7 and counts["conditional"] == 2 and counts["out_of_line"] == 0
    assert counts["instructions"] == 5 and counts["instructions_per_logit"] == 2.5
    assert counts["mma"] == 1 and counts["ex2"] == 1 and counts["fp32"] == 1


def test_work_kept_out_of_line_is_counted_and_a_loop_exit_is_not():
    code = parse_sass(
        sass(
            [
                "MOV R0, R1",  # 0x00
                "BRA 0x50",  # 0x10 enter the loop
                "LDGSTS.E.128 [R2], [R4.64]",  # 0x20 out of line: next key tile
                "IADD3 R4, R4, 0x80, RZ",  # 0x30
                "BRA 0x70",  # 0x40 back into the loop
                "HMMA.16816.F32 R4, R8, R12, R4",  # 0x50 loop start
                "@P0 BRA 0x20",  # 0x60 to the prefetch (taken but the last tile)
                "@P2 BRA 0xc0",  # 0x70 leaves the loop: never comes back
                "MUFU.EX2 R2, R3",  # 0x80
                "HMMA.16816.F32 R6, R8, R12, R6",  # 0x90
                "@P1 BRA 0x50",  # 0xa0 back edge
                "EXIT",  # 0xb0
                "STG.E [R2], R4",  # 0xc0 epilogue
                "EXIT",  # 0xd0
            ]
        )
    )
    counts = loop_counts(code, logits_per_thread=1)
    assert counts["body"] == 6 and counts["out_of_line"] == 3
    assert counts["instructions"] == 9 and counts["mma"] == 2


def test_no_loop_gives_none():
    assert loop_counts(parse_sass(sass(["MOV R0, R1", "EXIT"])), 1) is None
