// A minimal PNG writer for 8-bit grayscale images: the zlib stream uses
// stored (uncompressed) deflate blocks, so no compression library is
// needed; files are about the size of the pixels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lra {

// The PNG file's bytes for a width x height grayscale image (row-major).
std::vector<uint8_t> png_encode_gray(const uint8_t* pixels, int width, int height);
// Writes it to `path`; throws std::runtime_error on an I/O error.
void png_write_gray(const std::string& path, const uint8_t* pixels, int width, int height);

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
uint32_t adler32(const uint8_t* data, size_t n);

}  // namespace lra
