// The Node.js EventSource client of the task API's reference document, as written there (the line
// under "// Usage" left out); the last line streams the Task named on the command line. The tests run it
// with the document's base URL, http://localhost:9090, replaced by the address of the API under test,
// and MANAGEMENT_API_KEY set to a Kubernetes token.
const EventSource = require('eventsource');

function streamLogs(taskId) {
  const url = `http://localhost:9090/v1/tasks/${taskId}/logs/stream`;
  const eventSource = new EventSource(url, {
    headers: {
      'Authorization': `Bearer ${process.env.MANAGEMENT_API_KEY}`
    }
  });

  eventSource.on('message', (event) => {
    const { line, timestamp } = JSON.parse(event.data);
    console.log(`[${new Date(timestamp).toISOString()}] ${line}`);
  });

  eventSource.addEventListener('task-complete', (event) => {
    const { status, exitCode } = JSON.parse(event.data);
    console.log(`\nTask completed: ${status} (exit code: ${exitCode})`);
    eventSource.close();
  });

  eventSource.addEventListener('error', (event) => {
    if (event.data) {
      const { message } = JSON.parse(event.data);
      console.error(`Stream error: ${message}`);
    }
    eventSource.close();
  });

  eventSource.onerror = (error) => {
    console.error('Connection error:', error);
    eventSource.close();
  };

  return eventSource;
}

streamLogs(process.argv[2]);
