/* On-disk constants of qcow2 shared by the reader and the writer. */
#ifndef KBOSS_QCOW2_FORMAT_H
#define KBOSS_QCOW2_FORMAT_H

#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu     /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 112     /* with compression_type, padded to 8 */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_VIRTUAL_SIZE (UINT64_C(1) << 56)
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIR (64u * 1024 * 1024)

#define QCOW2_INCOMPAT_DIRTY (1u << 0)
#define QCOW2_INCOMPAT_CORRUPT (1u << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1u << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1u << 3)
#define QCOW2_INCOMPAT_EXTL2 (1u << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fu
#define QCOW2_AUTOCLEAR_BITMAPS (1u << 0)

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_OFLAG_COPIED (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO UINT64_C(1)
#define QCOW2_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
/* Bits that must be clear: L1 bits 1-8 and 56-62; L2 (standard) 1-8, 56-61. */
#define QCOW2_L1_RESERVED UINT64_C(0x7f000000000001fe)
#define QCOW2_L2_RESERVED UINT64_C(0x3f000000000001fe)

static inline uint16_t kb_be16(const uint8_t *p)
{
  return (uint16_t) ((p[0] << 8) | p[1]);
}

static inline uint32_t kb_be32(const uint8_t *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

static inline uint64_t kb_be64(const uint8_t *p)
{
  return ((uint64_t) kb_be32(p) << 32) | kb_be32(p + 4);
}

static inline void kb_put_be16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t) (v >> 8);
  p[1] = (uint8_t) v;
}

static inline void kb_put_be32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t) (v >> 24);
  p[1] = (uint8_t) (v >> 16);
  p[2] = (uint8_t) (v >> 8);
  p[3] = (uint8_t) v;
}

static inline void kb_put_be64(uint8_t *p, uint64_t v)
{
  kb_put_be32(p, (uint32_t) (v >> 32));
  kb_put_be32(p + 4, (uint32_t) v);
}

#endif
