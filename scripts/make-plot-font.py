#!/usr/bin/env python3
"""Makes host/assets/plot-sans.ttf, the font `wmtp plot` draws its PNG text with (embedded in the binary).

It is DejaVu Sans (Debian's fonts-dejavu-core) cut down to printable ASCII plus a few symbols, and
renamed "WmtpPlotSans": the Bitstream Vera licence allows modified fonts only under names without
"Bitstream" or "Vera" (host/assets/plot-sans.LICENSE has the licence, which must travel with the font).

Usage: python3 scripts/make-plot-font.py [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
Needs fontTools (pip install fonttools).
"""
import sys
from fontTools import subset
from fontTools.ttLib import TTFont

src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
out = "host/assets/plot-sans.ttf"
opts = subset.Options()
opts.layout_features = []
opts.hinting = False
opts.name_IDs = ["*"]
font = TTFont(src)
sub = subset.Subsetter(opts)
# printable ASCII, ±, ×, −, …, ·, µ, Δ, σ
sub.populate(unicodes=list(range(0x20, 0x7F)) + [0xB1, 0xD7, 0x2212, 0x2026, 0xB7, 0xB5, 0x394, 0x3C3])
sub.subset(font)
for rec in font["name"].names:
    text = rec.toUnicode()
    if rec.nameID in (1, 4, 16):
        rec.string = "WmtpPlotSans"
    elif rec.nameID == 6:
        rec.string = "WmtpPlotSans-Book"
    elif rec.nameID == 3:
        rec.string = "WmtpPlotSans: subset of DejaVu Sans"
    elif "Vera" in text and rec.nameID not in (0, 7, 13, 14):
        rec.string = text.replace("Bitstream Vera", "WmtpPlotSans").replace("Vera", "WmtpPlotSans")
font.save(out)
print(f"wrote {out}")
