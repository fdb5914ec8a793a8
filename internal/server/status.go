package server

import (
	"net/http"

	"github.com/idexd/idexd/internal/api"
)

// httpStatus maps a code to its HTTP status, in this one place: the
// transport is the server's (and the client's) business, not api's.
func httpStatus(code api.Code) int {
	switch code {
	case api.CodeInvalidRequest, api.CodeInvalidStudent, api.CodeInvalidPath, api.CodeLimitTooHigh,
		api.CodeNotRegular, api.CodeNotDirectory:
		return http.StatusBadRequest
	case api.CodeForbidden, api.CodePermissionDenied:
		return http.StatusForbidden
	case api.CodeScriptNotFound, api.CodeNotFound, api.CodeStudentNotFound, api.CodeFileNotFound:
		return http.StatusNotFound
	case api.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case api.CodeLocked, api.CodeRunEnded, api.CodeStdinClosed, api.CodeFileExists, api.CodeDirectoryNotEmpty,
		api.CodeStudentStopped:
		return http.StatusConflict
	case api.CodeStudentBusy, api.CodeRateLimited:
		return http.StatusTooManyRequests
	case api.CodeBodyTooLarge, api.CodeFileTooLarge:
		return http.StatusRequestEntityTooLarge
	case api.CodeQuotaExceeded, api.CodeDiskFull:
		return http.StatusInsufficientStorage
	case api.CodeDraining, api.CodeAtCapacity, api.CodeStoreUnavailable:
		return http.StatusServiceUnavailable
	case api.CodeTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}
