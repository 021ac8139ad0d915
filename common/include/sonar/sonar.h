/**
 * \file sonar.h
 * \brief Umbrella header for libsonar.
 */
#ifndef SONAR_SONAR_H
#define SONAR_SONAR_H

#include "sonar/status.h"
#include "sonar/util.h"
#include "sonar/protocol.h"
#include "sonar/bus.h"
#include "sonar/service.h"
#include "sonar/reply.h"
#include "sonar/http.h"
#include "sonar/checktable.h"
#include "sonar/log.h"
#include "sonar/outbox.h"
#include "sonar/inbox.h"
#include "sonar/promtext.h"
#include "sonar/health.h"
#include "sonar/statusstore.h"

#endif
