/* aquifers: shared between main.c and checks.c. */
#ifndef AQUIFERS_H
#define AQUIFERS_H

#include "choreo.h"

/* Registers aquifers' checks on a wells candidate (checks.c). */
sonar_status aquifers_add_checks(sonar_service *svc, choreo_app *app);

#endif
