/**
 * Errors the CLI prints as one line without a stack trace: a user's mistake (exit 2), a missing
 * privilege (exit 1), or an environment problem (exit 1). The last two are raised by the control
 * plane too, so they are defined there (src/control/errors.ts) and only re-exported here.
 */
export class UsageError extends Error {
  readonly exitCode = 2;
}

export { OperationalError, PrivilegeError } from "../control/errors.js";
