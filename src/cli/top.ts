/**
 * `qnat top [--router NAMESPACE] [--once]`: the running router's rates, connection table and
 * busiest connections, redrawn every second (control/top-view.ts draws; this file runs the
 * terminal). Plain ANSI escapes, no UI library: the screen is a few tables of text redrawn
 * whole once a second, which needs the alternate screen, a hidden cursor and raw keys, nothing
 * a layout engine adds. (ink 8 needs Node.js 22; ink 6 runs on 20 but brings React, its
 * reconciler and a WebAssembly layout engine into the router's runtime dependencies and JSX into
 * the build; blessed has been unmaintained since 2015 and has no types.)
 *
 * `q`, `Q` or Ctrl-C quits and gives the terminal back as it was (main screen, cursor, cooked
 * mode), also on SIGTERM. Without a terminal on stdout it refuses in one line, exit 2, unless
 * `--once`: then it prints one snapshot (two answers a second apart, for the rates) and exits.
 */
import { controlRequest, controlSocketPath, type ControlResponse } from "../control/socket.js";
import { renderTop, type TopView } from "../control/top-view.js";
import { OperationalError, UsageError } from "./errors.js";

/** Connections asked for: enough for a tall terminal; the screen shows what fits. */
const TOP_CONNECTIONS = 50;
const REFRESH_MS = 1000;

const ALTERNATE_SCREEN = "\x1b[?1049h";
const MAIN_SCREEN = "\x1b[?1049l";
const HIDE_CURSOR = "\x1b[?25l";
const SHOW_CURSOR = "\x1b[?25h";
const HOME_AND_CLEAR = "\x1b[H\x1b[2J";
const CTRL_C = "\x03";

export interface TopOptions {
  readonly namespace: string;
  readonly once: boolean;
  readonly out: (text: string) => void;
}

function asView(response: ControlResponse): TopView {
  if (!response.ok) throw new OperationalError(response.error);
  return response.data as TopView;
}

async function ask(namespace: string): Promise<TopView> {
  return asView(await controlRequest(controlSocketPath(namespace), { cmd: "top", connections: TOP_CONNECTIONS }));
}

function sleep(ms: number): Promise<void> {
  return new Promise<void>((resolve) => setTimeout(resolve, ms));
}

export async function runTop(options: TopOptions): Promise<number> {
  const { namespace, out } = options;
  if (options.once) {
    const previous = await ask(namespace);
    await sleep(REFRESH_MS);
    const now = await ask(namespace);
    out(renderTop({ namespace, now, previous }).join("\n") + "\n");
    return 0;
  }
  const stdout = process.stdout;
  const stdin = process.stdin;
  if (!stdout.isTTY || !stdin.isTTY) throw new UsageError("top needs a terminal (stdin and stdout); use --once for a snapshot");
  // The first answer before the screen changes: a router that is not running is one line, as for `qnat show`.
  let previous: TopView | undefined;
  let now = await ask(namespace);
  return new Promise<number>((resolve) => {
    let problem: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const draw = (): void => {
      const lines = renderTop({ namespace, now, previous, problem, columns: stdout.columns, rows: stdout.rows, keys: true });
      stdout.write(HOME_AND_CLEAR + lines.join("\r\n"));
    };
    const restore = (): void => {
      if (stdin.isTTY) stdin.setRawMode(false);
      stdout.write(SHOW_CURSOR + MAIN_SCREEN);
    };
    const quit = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      stdin.off("data", onKey);
      stdout.off("resize", draw);
      process.off("SIGTERM", quit);
      process.off("exit", restore);
      stdin.pause();
      restore();
      resolve(0);
    };
    const onKey = (key: string): void => {
      if (key === "q" || key === "Q" || key === CTRL_C) quit();
    };
    const refresh = (): void => {
      ask(namespace).then(
        (view) => {
          previous = now;
          now = view;
          problem = undefined;
        },
        (error: unknown) => {
          problem = `router not answering: ${error instanceof Error ? error.message.split("\n", 1)[0] : String(error)}`;
        },
      ).finally(() => {
        if (done) return;
        draw();
        timer = setTimeout(refresh, REFRESH_MS);
      });
    };
    // The terminal comes back even if the process ends some other way.
    process.on("exit", restore);
    process.on("SIGTERM", quit);
    stdout.write(ALTERNATE_SCREEN + HIDE_CURSOR);
    stdin.setRawMode(true);
    stdin.setEncoding("utf8");
    stdin.on("data", onKey);
    stdin.resume();
    stdout.on("resize", draw);
    draw();
    timer = setTimeout(refresh, REFRESH_MS);
  });
}
