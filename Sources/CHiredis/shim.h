#pragma once
// hiredis does the Redis protocol only: redisFormatCommandArgv encodes commands, a redisReader decodes
// replies fed to it from a SwiftNIO channel. hiredis's own (blocking) I/O is never used.
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
