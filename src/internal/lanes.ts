/**
 * The lane of a document key: FNV-1a over the key's UTF-16 code units, so one key
 * always lands in the same lane and keys spread evenly.
 */
export const laneOf = (key: string, lanes: number): number => {
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return (hash >>> 0) % lanes
}
