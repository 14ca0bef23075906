/**
 * Errors the router's control plane raises and the CLI prints as one line without a stack trace:
 * a missing privilege (exit 1) or an environment problem a user can act on (exit 1, or the code
 * given). They live here, below src/cli, so that src/control never imports from the CLI
 * (STYLE.md rule 1: a lower layer never imports a higher one).
 */
export class PrivilegeError extends Error {
  readonly exitCode = 1;
  constructor(what: string) {
    super(`${what} needs root (network namespaces and TUN devices): run it as root`);
  }
}

/** Anything else a user can act on: a router not running, a namespace already in use... */
export class OperationalError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}
