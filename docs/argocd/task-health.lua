-- Argo CD health of a taskyard.dev/Task, from the phase the taskyard operator writes to its status.
-- Succeeded: Healthy. Failed: Degraded. Pending, Queued, Running, Cancelling, or no status yet:
-- Progressing.
-- Cancelled: Healthy, with a message that says so (a cancel is a decision, not a fault).
local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the taskyard operator to pick up the Task"
  return hs
end

local phase = status.phase
local summary = phase
if status.reason ~= nil and status.reason ~= "" and status.reason ~= phase then
  summary = summary .. " (" .. status.reason .. ")"
end
if status.message ~= nil and status.message ~= "" then
  summary = summary .. ": " .. status.message
end

if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Cancelled" then
  hs.status = "Healthy"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" or phase == "Cancelling" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
end
hs.message = summary
return hs
