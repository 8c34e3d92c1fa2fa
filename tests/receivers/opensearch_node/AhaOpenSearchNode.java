// An OpenSearch node for the tests of the Elasticsearch / OpenSearch sink, run from the plain
// Maven Central jars (tests/receivers/opensearch.py fetches them, compiles this file and runs it).
//
// The jars have no distribution layout (no modules/ folder), so the Netty 4 transport, which
// serves HTTP, is handed to the node as a classpath plugin: that is what Node's protected
// constructor is for (OpenSearch's own MockNode does the same). The test framework is not on the
// classpath: with it the node would believe it runs under a test runner.
//
//   java -cp 'classes:libs/*' AhaOpenSearchNode path.home=/tmp/x http.port=9200 ...
//
// Every argument is one `key=value` node setting. The node logs through the log4j2 properties in
// <path.home>/config, runs until SIGTERM and then closes cleanly; with -Daha.siem.parent.pid=PID
// it also exits when that process is gone (a test run killed outright leaves no node behind).

import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.ingest.common.IngestCommonPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.script.mustache.MustachePlugin;
import org.opensearch.transport.Netty4Plugin;

public final class AhaOpenSearchNode extends Node {

    private AhaOpenSearchNode(Environment environment) {
        // Ingest processors and their mustache templates too (modules of the distribution).
        super(environment, List.of(Netty4Plugin.class, IngestCommonPlugin.class, MustachePlugin.class), true);
    }

    public static void main(String[] args) throws Exception {
        try {
            run(args);
        } catch (Throwable e) {
            // A port already taken, say: exit at once (the hook closes a node that was made)
            // instead of lingering with the node's threads.
            e.printStackTrace();
            System.exit(1);
        }
    }

    private static void watchParent() {
        String pid = System.getProperty("aha.siem.parent.pid");
        if (pid == null || pid.isEmpty()) {
            return;
        }
        Thread watch = new Thread(() -> {
            ProcessHandle.of(Long.parseLong(pid)).ifPresent(parent -> parent.onExit().join());
            System.exit(0);
        }, "aha-siem-parent-watch");
        watch.setDaemon(true);
        watch.start();
    }

    private static void run(String[] args) throws Exception {
        watchParent();
        LogConfigurator.registerErrorListener();
        Settings.Builder settings = Settings.builder();
        for (String arg : args) {
            int equals = arg.indexOf('=');
            if (equals <= 0) {
                throw new IllegalArgumentException("expected key=value, got: " + arg);
            }
            settings.put(arg.substring(0, equals), arg.substring(equals + 1));
        }
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings.build(), Map.of(), null, () -> "aha-siem-test");
        LogConfigurator.setNodeName(Node.NODE_NAME_SETTING.get(environment.settings()));
        LogConfigurator.configure(environment);

        Node node = new AhaOpenSearchNode(environment);
        CountDownLatch closed = new CountDownLatch(1);
        // The node's threads are daemons: main waits until the shutdown hook has closed it.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(10, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "aha-siem-opensearch-shutdown"));
        node.start();
        closed.await();
    }
}
