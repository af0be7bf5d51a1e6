"""Checks fa-lra's PNG files with Python's own zlib (an inflate and a CRC
independent of the writer's): signature, chunk CRCs, 8-bit grayscale
header, and that the pixels are those of the data file's records.

usage: check_png.py DATA_FILE PNG_DIR
"""
import os
import struct
import sys
import zlib


def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc, (path, ctype)
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = ihdr
    assert (depth, color, interlace) == (8, 0, 0), ihdr
    raw = zlib.decompress(idat)
    assert len(raw) == height * (width + 1)
    rows = [raw[y * (width + 1):(y + 1) * (width + 1)] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, b"".join(r[1:] for r in rows)


def main():
    data_path, png_dir = sys.argv[1], sys.argv[2]
    blob = open(data_path, "rb").read()
    seq_len, size = struct.unpack("<II", blob[24:32])
    record = 8 + seq_len
    names = sorted(n for n in os.listdir(png_dir) if n.endswith(".png"))
    assert names, "no PNG files"
    for name in names:
        index = int(name.split("-")[2])
        label = int(name.split("label")[1].split(".")[0])
        width, pixels = read_png(os.path.join(png_dir, name))
        assert width == size
        off = 64 + index * record
        (file_label,) = struct.unpack("<i", blob[off:off + 4])
        assert file_label == label, name
        assert pixels == blob[off + 8:off + 8 + seq_len], name
    print(f"png ok: {len(names)} files")


main()
