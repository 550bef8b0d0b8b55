/*
 * phigate.h: the umbrella header of libphigate. Including it gives every
 * public module; each has its own header under phigate/ with its contract.
 */
#ifndef PHIGATE_H
#define PHIGATE_H

#include "phigate/error.h"
#include "phigate/crypto.h"
#include "phigate/phi.h"
#include "phigate/store.h"
#include "phigate/apikey.h"
#include "phigate/ulid.h"
#include "phigate/audit.h"
#include "phigate/ratelimit.h"
#include "phigate/webhook.h"
#include "phigate/webhook_store.h"
#include "phigate/webhook_inbox.h"

#endif /* PHIGATE_H */
