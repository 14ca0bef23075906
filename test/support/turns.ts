/**
 * Whether control work returns to the event loop (the packet loop shares the thread): a
 * setImmediate chain runs `onTurn` once per turn of the loop while `work` is pending.
 */
export async function turnsDuring<T>(work: Promise<T>, onTurn: () => void = () => undefined): Promise<{ result: T; turns: number }> {
  let turns = 0;
  let pending = true;
  const turn = (): void => {
    if (!pending) return;
    turns++;
    onTurn();
    setImmediate(turn);
  };
  setImmediate(turn);
  try {
    return { result: await work, turns };
  } finally {
    pending = false;
  }
}
