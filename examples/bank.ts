/**
 * The openbank example's write side in miniature: a little bank that decides
 * events the way a real one would. Plain TypeScript with no library code (the
 * events' types come from examples/openbank.ts, erased when compiled), so the
 * demo's tellers' process, which only appends, loads nothing else.
 */
import type { BankEvent, Transaction } from "./openbank.js"

/**
 * A little bank that decides events the way the write side would: accounts
 * belong to registered people, withdrawals and transfers stay within the
 * overdraft limit. Deterministic for a seed.
 */
export const simulate = function*(count: number, seed = 42): Generator<readonly [stream: string, event: BankEvent]> {
  let state = seed >>> 0 || 1
  const random = () => {
    // xorshift32: small, fast, reproducible
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) / 0x1_0000_0000
  }
  const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(random() * items.length)]!
  const firstNames = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Tony"]
  const lastNames = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman", "Hoare"]
  const people: Array<string> = []
  const open: Array<{ readonly id: string; readonly ownerId: string; balance: number; readonly overdraftLimit: number }> = []
  for (let n = 0; n < count; n++) {
    const roll = random()
    if (people.length < 3 || roll < 0.04) {
      const personId = `p${people.length + 1}`
      people.push(personId)
      yield [`person-${personId}`, {
        type: "PersonRegistered",
        data: { personId, firstName: pick(firstNames), lastName: pick(lastNames) }
      }]
    } else if (open.length < 2 || roll < 0.1) {
      const account = { id: `a${open.length + 1}`, ownerId: pick(people), balance: 0, overdraftLimit: pick([0, 10_000, 50_000]) }
      open.push(account)
      yield [`account-${account.id}`, {
        type: "BankAccountCreated",
        data: { accountId: account.id, ownerId: account.ownerId, overdraftLimit: account.overdraftLimit }
      }]
    } else {
      const account = pick(open)
      const amount = 100 * (1 + Math.floor(random() * 500))
      const available = account.balance + account.overdraftLimit
      const record = (transaction: Transaction) =>
        [`account-${account.id}`, {
          type: "BankAccountTransactionRecorded",
          data: { accountId: account.id, ownerId: account.ownerId, transaction }
        }] as const
      if (roll < 0.55 || available < amount) {
        account.balance += amount
        yield record({ kind: "deposit", amount })
      } else if (roll < 0.8) {
        account.balance -= amount
        yield record({ kind: "withdrawal", amount })
      } else {
        const to = pick(open.filter((other) => other !== account))
        account.balance -= amount
        to.balance += amount
        yield record({ kind: "transfer", amount, to: to.id, toOwnerId: to.ownerId })
      }
    }
  }
}
