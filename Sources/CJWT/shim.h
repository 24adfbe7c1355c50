#pragma once
// libjwt for JWT minting (the `gatehouse token` command, tests); libjwt is built on OpenSSL's libcrypto, which
// also serves signature verification with keys parsed once (EVP_PKEY), the digests and MACs (SHA-256 of tokens
// and API keys, HMAC), so the gateway links one crypto library.
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/params.h>
