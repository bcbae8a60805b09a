/* rlbench: the physics loop of the batched locomotion backend (envs/locomotion_batched.py), in C.

   For each slot: load the slot's state row into the scratch mjData d, call mj_step
   frame_skip times, store the state back. These are exactly the three MuJoCo calls the
   backend's Python loop makes per slot (mj_setState, mj_step x frame_skip, mj_getState), on
   the same library (libmujoco of the installed mujoco package), so the results are the same
   bits; the loop just runs without the interpreter, and without the GIL when called through
   ctypes. Compiled on first use by envs/slot_physics.py. */
#include <mujoco/mujoco.h>

/* Step the slots idx[0..k): each thread calling this with the same counter *next takes the
   next `grab` slots until none are left (dynamic scheduling: slots cost different amounts of
   physics, so fixed halves would leave one thread idle while the other finishes). Which
   thread steps a slot does not change its result: mj_setState loads everything the step
   reads from the slot's row into the thread's scratch mjData d. */
void rlbench_step_slots(const mjModel* const* models, mjData* d, mjtNum* states, long long nstate,
                        const long long* idx, long long k, unsigned int spec, int frame_skip,
                        long long* next, long long grab) {
  for (;;) {
    const long long start = __atomic_fetch_add(next, grab, __ATOMIC_RELAXED);
    if (start >= k) {
      return;
    }
    const long long stop = start + grab < k ? start + grab : k;
    for (long long j = start; j < stop; j++) {
      const long long i = idx[j];
      const mjModel* m = models[i];
      mjtNum* row = states + i * nstate;
      mj_setState(m, d, row, spec);
      for (int s = 0; s < frame_skip; s++) {
        mj_step(m, d);
      }
      mj_getState(m, d, row, spec);
    }
  }
}
