/* The screenshot PNG writer: a PPM comes out as a PNG whose chunks have
 * valid CRCs and whose pixels decompress to exactly the PPM's; what is not
 * a P6 PPM is refused. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "png.h"

static uint32_t be32(const unsigned char *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/* A PPM of W x H with a pattern; *RET_PIX points at its pixels. */
static unsigned char *make_ppm(unsigned w, unsigned h, unsigned maxval, size_t *ret_len, size_t *ret_hdr)
{
  char hdr[64];
  int n = snprintf(hdr, sizeof hdr, "P6\n# a comment\n%u %u\n%u\n", w, h, maxval);
  size_t len = (size_t) n + (size_t) w * h * 3;
  unsigned char *p = malloc(len);

  cr_assert_not_null(p);
  memcpy(p, hdr, (size_t) n);
  for (size_t i = 0; i < (size_t) w * h * 3; i++)
    p[n + i] = (unsigned char) ((i * 7 + i / 5) % (maxval + 1));
  *ret_len = len;
  *ret_hdr = (size_t) n;
  return p;
}

Test(png, ppm_round_trip)
{
  const unsigned w = 37, h = 11;
  size_t len, hdr, pnglen, pos = 8, idatlen = 0;
  unsigned char *ppm = make_ppm(w, h, 255, &len, &hdr), *png = NULL, *idat = NULL;
  unsigned gw = 0, gh = 0, sw = 0, sh = 0;
  bool seen_iend = false;

  cr_assert_eq(kb_png_from_ppm(ppm, len, &png, &pnglen, &gw, &gh), 0);
  cr_assert_eq(gw, w);
  cr_assert_eq(gh, h);
  cr_assert(memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0, "PNG signature");
  cr_assert_eq(kb_png_size(png, pnglen, &sw, &sh), 0);
  cr_assert_eq(sw, w);
  cr_assert_eq(sh, h);
  while (pos + 12 <= pnglen) {
    uint32_t n = be32(png + pos);
    const unsigned char *type = png + pos + 4;
    cr_assert_leq(pos + 12 + n, pnglen, "chunk inside the file");
    cr_assert_eq(crc32(0, type, 4 + n), be32(png + pos + 8 + n), "chunk %.4s CRC", type);
    if (memcmp(type, "IHDR", 4) == 0) {
      cr_assert_eq(be32(png + pos + 8), w);
      cr_assert_eq(be32(png + pos + 12), h);
      cr_assert_eq(png[pos + 16], 8, "bit depth");
      cr_assert_eq(png[pos + 17], 2, "RGB");
    } else if (memcmp(type, "IDAT", 4) == 0) {
      idat = realloc(idat, idatlen + n);
      memcpy(idat + idatlen, png + pos + 8, n);
      idatlen += n;
    } else if (memcmp(type, "IEND", 4) == 0)
      seen_iend = true;
    pos += 12 + n;
  }
  cr_assert(seen_iend);
  cr_assert_eq(pos, pnglen, "nothing after IEND");
  {
    uLongf rawlen = (uLongf) h * (3 * w + 1);
    unsigned char *raw = malloc(rawlen + 1);
    uLongf got = rawlen + 1;
    cr_assert_eq(uncompress(raw, &got, idat, idatlen), Z_OK);
    cr_assert_eq(got, rawlen);
    for (unsigned y = 0; y < h; y++) {
      const unsigned char *row = raw + (size_t) y * (3 * w + 1);
      cr_assert_eq(row[0], 0, "filter type None");
      cr_assert(memcmp(row + 1, ppm + hdr + (size_t) y * 3 * w, 3 * w) == 0, "row %u", y);
    }
    free(raw);
  }
  free(idat);
  free(png);
  free(ppm);
}

Test(png, maxval_scaled)
{
  size_t len, hdr, pnglen;
  unsigned char *ppm = make_ppm(4, 2, 15, &len, &hdr), *png = NULL;
  unsigned w, h;

  cr_assert_eq(kb_png_from_ppm(ppm, len, &png, &pnglen, &w, &h), 0);
  {
    /* The first IDAT right after IHDR (8 + 25 bytes): its pixels scaled to 0-255. */
    unsigned char raw[2 * (3 * 4 + 1)];
    uLongf got = sizeof raw;
    cr_assert(memcmp(png + 33 + 4, "IDAT", 4) == 0);
    cr_assert_eq(uncompress(raw, &got, png + 33 + 8, be32(png + 33)), Z_OK);
    cr_assert_eq(got, sizeof raw);
    for (unsigned i = 0; i < 12; i++)
      cr_assert_eq(raw[1 + i], ppm[hdr + i] * 255u / 15, "sample %u", i);
  }
  free(png);
  free(ppm);
}

Test(png, refuses_non_ppm)
{
  const char *bad[] = { "P5\n2 2\n255\nxxxx", "P6\n2 2\n255\nshort", "P6\n0 2\n255\n", "GIF89a", "", "P6\n2 2\n65535\n" };
  size_t i;

  for (i = 0; i < sizeof bad / sizeof *bad; i++) {
    unsigned char *png = NULL;
    size_t pnglen = 0;
    unsigned w, h;
    cr_assert_eq(kb_png_from_ppm((const unsigned char *) bad[i], strlen(bad[i]), &png, &pnglen, &w, &h),
                 -EINVAL, "input %zu refused", i);
    cr_assert_null(png);
  }
  cr_assert_eq(kb_png_size((const unsigned char *) "not a png at all, really", 24, &(unsigned){ 0 },
                           &(unsigned){ 0 }), -EINVAL);
}
