package api

import (
	"errors"
	"fmt"
)

// Code is a stable, machine-readable error code. Clients branch on it; the
// message beside it is for people and may change.
type Code string

// The error codes of the protocol. Adding one is fine; renaming one breaks
// the web tier.
const (
	CodeInvalidRequest   Code = "invalid_request"
	CodeInvalidStudent   Code = "invalid_student"
	CodeInvalidPath      Code = "invalid_path"
	CodeLimitTooHigh     Code = "limit_too_high"
	CodeScriptNotFound   Code = "script_not_found"
	CodeNotFound         Code = "not_found"
	CodeStudentNotFound  Code = "student_not_found"
	CodeLocked           Code = "locked"
	CodeDraining         Code = "draining"
	CodeAtCapacity       Code = "at_capacity"
	CodeStoreUnavailable Code = "store_unavailable"
	CodeStartFailed      Code = "start_failed"
	CodeForbidden        Code = "forbidden"
	CodeBodyTooLarge     Code = "body_too_large"
	CodeMethodNotAllowed Code = "method_not_allowed"
	CodeRunEnded         Code = "run_ended"
	CodeStdinClosed      Code = "stdin_closed"
	CodeTimeout          Code = "timeout"
	CodeInternal         Code = "internal"
	// Codes of the file routes (/v1/students/{name}/files).
	CodeFileNotFound      Code = "file_not_found"
	CodeNotRegular        Code = "not_regular"
	CodeNotDirectory      Code = "not_directory"
	CodeFileExists        Code = "file_exists"
	CodeDirectoryNotEmpty Code = "directory_not_empty"
	CodePermissionDenied  Code = "permission_denied"
	CodeFileTooLarge      Code = "file_too_large"
	CodeQuotaExceeded     Code = "quota_exceeded"
	CodeDiskFull          Code = "disk_full"
	// Codes of fair admission (POST /v1/runs): a student past
	// max_runs_per_student, past student_starts_per_minute, and a start
	// that waited in the queue while an admin stopped the student's runs.
	CodeStudentBusy    Code = "student_busy"
	CodeRateLimited    Code = "rate_limited"
	CodeStudentStopped Code = "student_stopped"
)

// Codes lists every Code, for the tests that hold the documentation and
// the HTTP statuses to it (TestCodesListsEveryCode keeps it whole).
var Codes = []Code{
	CodeInvalidRequest, CodeInvalidStudent, CodeInvalidPath, CodeLimitTooHigh, CodeScriptNotFound,
	CodeNotFound, CodeStudentNotFound, CodeLocked, CodeDraining, CodeAtCapacity, CodeStoreUnavailable,
	CodeStartFailed, CodeForbidden, CodeBodyTooLarge, CodeMethodNotAllowed, CodeRunEnded, CodeStdinClosed,
	CodeTimeout, CodeInternal,
	CodeFileNotFound, CodeNotRegular, CodeNotDirectory, CodeFileExists, CodeDirectoryNotEmpty,
	CodePermissionDenied, CodeFileTooLarge, CodeQuotaExceeded, CodeDiskFull,
	CodeStudentBusy, CodeRateLimited, CodeStudentStopped,
}

// Error is the one error type of the protocol. The server writes it as
// {"error": {...}}; the client decodes it back, so callers on both sides
// test it the same way: errors.Is(err, api.ErrLocked).
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	// RunID names the run an error is about: the running run for
	// `locked`, the failed run for `start_failed`.
	RunID string `json:"run_id,omitempty"`
	// RunIDs names the student's running runs for `student_busy`, so that
	// the web tier can offer to stop one.
	RunIDs []string `json:"run_ids,omitempty"`
	// RetryAfterS is, for `rate_limited`, how many seconds until the
	// student may start again; the server also sends it as Retry-After.
	RetryAfterS int `json:"retry_after_s,omitempty"`
	// Cause is the error underneath, on this side of the wire only: the
	// daemon's logs and errors.Is/As see it; clients get its text in
	// Message.
	Cause error `json:"-"`
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Wrap builds an *Error with code whose message is the formatted text
// followed by the cause's, keeping the cause for errors.Is/As.
func Wrap(code Code, cause error, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if cause != nil {
		msg += ": " + cause.Error()
	}
	return &Error{Code: code, Message: msg, Cause: cause}
}

func (e *Error) Error() string {
	if e.RunID != "" {
		return fmt.Sprintf("%s (%s, run %s)", e.Message, e.Code, e.RunID)
	}
	return fmt.Sprintf("%s (%s)", e.Message, e.Code)
}

// Is makes errors.Is match on the code alone.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Sentinels to compare against with errors.Is.
var (
	ErrInvalidRequest   = &Error{Code: CodeInvalidRequest}
	ErrInvalidStudent   = &Error{Code: CodeInvalidStudent}
	ErrInvalidPath      = &Error{Code: CodeInvalidPath}
	ErrLimitTooHigh     = &Error{Code: CodeLimitTooHigh}
	ErrScriptNotFound   = &Error{Code: CodeScriptNotFound}
	ErrNotFound         = &Error{Code: CodeNotFound}
	ErrStudentNotFound  = &Error{Code: CodeStudentNotFound}
	ErrLocked           = &Error{Code: CodeLocked}
	ErrDraining         = &Error{Code: CodeDraining}
	ErrAtCapacity       = &Error{Code: CodeAtCapacity}
	ErrStoreUnavailable = &Error{Code: CodeStoreUnavailable}
	ErrStartFailed      = &Error{Code: CodeStartFailed}
	ErrForbidden        = &Error{Code: CodeForbidden}
	ErrRunEnded         = &Error{Code: CodeRunEnded}
	ErrStdinClosed      = &Error{Code: CodeStdinClosed}

	ErrFileNotFound      = &Error{Code: CodeFileNotFound}
	ErrNotRegular        = &Error{Code: CodeNotRegular}
	ErrNotDirectory      = &Error{Code: CodeNotDirectory}
	ErrFileExists        = &Error{Code: CodeFileExists}
	ErrDirectoryNotEmpty = &Error{Code: CodeDirectoryNotEmpty}
	ErrPermissionDenied  = &Error{Code: CodePermissionDenied}
	ErrFileTooLarge      = &Error{Code: CodeFileTooLarge}
	ErrQuotaExceeded     = &Error{Code: CodeQuotaExceeded}
	ErrDiskFull          = &Error{Code: CodeDiskFull}

	ErrStudentBusy    = &Error{Code: CodeStudentBusy}
	ErrRateLimited    = &Error{Code: CodeRateLimited}
	ErrStudentStopped = &Error{Code: CodeStudentStopped}
)

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError finds the *Error in err's chain, or wraps err as `internal`.
// Context added by wrapping (fmt.Errorf("start run %s: %w", ...)) is kept
// in the message.
func AsError(err error) *Error {
	var e *Error
	if !errors.As(err, &e) {
		return &Error{Code: CodeInternal, Message: err.Error()}
	}
	if err == error(e) { //nolint:errorlint // identity: err is the coded error itself, unwrapped

		return e
	}
	return &Error{Code: e.Code, Message: trimCode(err, e), RunID: e.RunID, RunIDs: e.RunIDs, RetryAfterS: e.RetryAfterS, Cause: e.Cause}
}

// trimCode returns err's text without the " (code)" suffix that the inner
// *Error adds, so that the message reads once, not twice.
func trimCode(err error, e *Error) string {
	s := err.Error()
	suffix := e.Error()[len(e.Message):]
	if len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)]
	}
	return s
}
