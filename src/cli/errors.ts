/**
 * Errors the CLI prints as one line without a stack trace: a user's mistake (exit 2), a missing
 * privilege (exit 1), or an environment problem (exit 1).
 */
export class UsageError extends Error {
  readonly exitCode = 2;
}

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
