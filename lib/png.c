#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "png.h"

static const unsigned char png_sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };

/* One number of the PPM header, after blanks and # comments. */
static int ppm_number(const unsigned char *p, size_t len, size_t *pos, unsigned *ret)
{
  unsigned long v = 0;
  size_t digits = 0;

  while (*pos < len) {
    if (p[*pos] == '#') {
      while (*pos < len && p[*pos] != '\n')
        (*pos)++;
    } else if (p[*pos] == ' ' || p[*pos] == '\t' || p[*pos] == '\n' || p[*pos] == '\r')
      (*pos)++;
    else
      break;
  }
  while (*pos < len && p[*pos] >= '0' && p[*pos] <= '9') {
    v = v * 10 + (p[*pos] - '0');
    if (v > 65535)
      return -EINVAL;
    (*pos)++;
    digits++;
  }
  if (!digits)
    return -EINVAL;
  *ret = (unsigned) v;
  return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/* Append a chunk (length, type, data, crc of type+data) at OUT. */
static size_t put_chunk(unsigned char *out, const char *type, const unsigned char *data, size_t len)
{
  uLong crc;

  put32(out, (uint32_t) len);
  memcpy(out + 4, type, 4);
  if (len)
    memcpy(out + 8, data, len);
  crc = crc32(0L, out + 4, (uInt) (len + 4));
  put32(out + 8 + len, (uint32_t) crc);
  return len + 12;
}

int kb_png_from_ppm(const unsigned char *ppm, size_t len, unsigned char **ret_png, size_t *ret_len,
                    unsigned *ret_width, unsigned *ret_height)
{
  unsigned w, h, maxval, x, y;
  size_t pos = 2, rowlen, rawlen;
  unsigned char *raw, *z, *out;
  uLongf zlen;
  unsigned char ihdr[13];
  size_t n;

  if (len < 2 || ppm[0] != 'P' || ppm[1] != '6')
    return -EINVAL;
  if (ppm_number(ppm, len, &pos, &w) < 0 || ppm_number(ppm, len, &pos, &h) < 0 ||
      ppm_number(ppm, len, &pos, &maxval) < 0)
    return -EINVAL;
  if (w == 0 || h == 0 || maxval == 0 || maxval > 255 || pos >= len)
    return -EINVAL;
  pos++;   /* the single blank after maxval */
  rowlen = (size_t) w * 3;
  if (len - pos < rowlen * h)
    return -EINVAL;

  /* Each PNG row: filter type 0, then RGB; values scaled to 0-255. */
  rawlen = (rowlen + 1) * h;
  raw = malloc(rawlen);
  if (!raw)
    return -ENOMEM;
  for (y = 0; y < h; y++) {
    unsigned char *row = raw + y * (rowlen + 1);
    const unsigned char *src = ppm + pos + y * rowlen;
    row[0] = 0;
    if (maxval == 255)
      memcpy(row + 1, src, rowlen);
    else
      for (x = 0; x < rowlen; x++)
        row[1 + x] = (unsigned char) ((src[x] > maxval ? maxval : src[x]) * 255u / maxval);
  }
  zlen = compressBound(rawlen);
  z = malloc(zlen);
  if (!z) {
    free(raw);
    return -ENOMEM;
  }
  if (compress2(z, &zlen, raw, rawlen, 6) != Z_OK) {
    free(raw);
    free(z);
    return -ENOMEM;
  }
  free(raw);

  out = malloc(sizeof png_sig + 12 + sizeof ihdr + 12 + zlen + 12);
  if (!out) {
    free(z);
    return -ENOMEM;
  }
  memcpy(out, png_sig, sizeof png_sig);
  n = sizeof png_sig;
  put32(ihdr, w);
  put32(ihdr + 4, h);
  ihdr[8] = 8;    /* bit depth */
  ihdr[9] = 2;    /* colour type: RGB */
  ihdr[10] = 0;   /* deflate */
  ihdr[11] = 0;   /* adaptive filtering */
  ihdr[12] = 0;   /* no interlace */
  n += put_chunk(out + n, "IHDR", ihdr, sizeof ihdr);
  n += put_chunk(out + n, "IDAT", z, zlen);
  n += put_chunk(out + n, "IEND", NULL, 0);
  free(z);
  *ret_png = out;
  *ret_len = n;
  if (ret_width)
    *ret_width = w;
  if (ret_height)
    *ret_height = h;
  return 0;
}

int kb_png_size(const unsigned char *png, size_t len, unsigned *ret_width, unsigned *ret_height)
{
  if (len < 8 + 8 + 13 || memcmp(png, png_sig, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0)
    return -EINVAL;
  *ret_width = (unsigned) png[16] << 24 | (unsigned) png[17] << 16 | (unsigned) png[18] << 8 | png[19];
  *ret_height = (unsigned) png[20] << 24 | (unsigned) png[21] << 16 | (unsigned) png[22] << 8 | png[23];
  return 0;
}
